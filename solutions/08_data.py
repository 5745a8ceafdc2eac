"""Solutions to the exercises of chapter 08 (nbs/3_pretraining/08_data.ipynb): try them yourself first.

Each function has the name of the notebook's stub; `CHECKS` maps it to the checker that grades it."""
import re
import zlib
from collections import defaultdict

import numpy as np

PRIME = (1 << 61) - 1  # a Mersenne prime above every 32-bit CRC: (a*x + b) mod PRIME is a random-looking permutation of [0, PRIME)


def my_minhash_signature(shingle_set: set[str], num_perm: int) -> np.ndarray:
    "(num_perm,) integers: position i is the minimum over the set of hash function i."
    rng = np.random.default_rng(1234)            # a fixed seed: the same hash functions for every set, in every run
    a = [int(v) for v in rng.integers(1, 2**60, num_perm)]
    b = [int(v) for v in rng.integers(0, 2**60, num_perm)]
    xs = [zlib.crc32(s.encode('utf-8')) for s in shingle_set]   # bytes, not hash(): the same in every process
    if not xs: return np.full(num_perm, PRIME, dtype=object)     # the empty set: a value no real hash reaches
    # Python ints do not overflow, so a*x + b is exact; one (a_i, b_i) per position
    return np.array([min((ai * x + bi) % PRIME for x in xs) for ai, bi in zip(a, b)], dtype=object)


def my_lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    "Pairs (i, j), i < j, whose signatures agree on every column of at least one band."
    pairs = set()
    for band in range(bands):
        buckets = defaultdict(list)              # the band's values -> documents with exactly these values
        for i, row in enumerate(signatures[:, band * rows:(band + 1) * rows]):
            buckets[tuple(row.tolist())].append(i)
        for docs in buckets.values():            # every pair inside a bucket is a candidate
            pairs.update((docs[x], docs[y]) for x in range(len(docs)) for y in range(x + 1, len(docs)))
    return pairs


_PATTERNS = [
    ('<EMAIL>', r'(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])'),
    ('<IP>', r'(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)'),
    ('<ID>', r'(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])'),   # US SSN: no 000/666/9xx area
    ('<PHONE>', r'(?<![\w-])(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-])'),      # (555) 123-4567, 555-123-4567
]


def my_deidentify(text: str) -> str:
    "`text` with e-mails, IPv4 addresses, SSNs and North-American phone numbers replaced by <EMAIL>, <IP>, <ID>, <PHONE>."
    for placeholder, pattern in _PATTERNS:       # in this order: an e-mail's digits must not be read as a phone number
        text = re.sub(pattern, placeholder, text)
    return text


CHECKS = {
    'my_minhash_signature': 'llm_lab.data:check_minhash_signature',
    'my_lsh_candidates': 'llm_lab.data:check_lsh_candidates',
    'my_deidentify': 'llm_lab.data:check_deidentify',
}
