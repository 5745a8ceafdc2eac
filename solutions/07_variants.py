"""Solutions to chapter 07 (Transformer variants), "Your turn". Try the exercises first: nbs/2_transformers/07_variants.ipynb."""
import math

import torch


def my_t5_bucket(rel: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    "T5's relative-position bucket of each entry of rel (key position − query position)."
    bucket = torch.zeros_like(rel, dtype=torch.long)
    if bidirectional:
        n_buckets //= 2                               # half of the buckets for each direction
        bucket += (rel > 0).long() * n_buckets        # keys to the right of the query: the upper half
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)                    # a decoder only looks left; keys to the right -> distance 0
    exact = n_buckets // 2                            # small distances get a bucket each
    # larger ones: logarithmically wider buckets up to max_distance, truncated toward zero, then clamped to the last
    log_bucket = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                          * (n_buckets - exact)).long()
    return bucket + torch.where(dist < exact, dist, log_bucket.clamp(max=n_buckets - 1))


def my_window_mask(t: int, window: int, causal: bool) -> torch.Tensor:
    "(t, t) bool mask: query i (row) may attend key j (column) when |i − j| < window, and j <= i if causal."
    i = torch.arange(t)[:, None]                      # (t, 1) query positions
    j = torch.arange(t)[None, :]                      # (1, t) key positions
    ok = (i - j).abs() < window
    if causal: ok &= j <= i
    return ok


def my_alibi_slopes(n_head: int) -> torch.Tensor:
    "ALiBi's per-head slopes, (n_head,)."
    def powers_of_2(n): return [2 ** (-8 * (i + 1) / n) for i in range(n)]
    p = 2 ** math.floor(math.log2(n_head))            # the largest power of two <= n_head
    # p slopes for p heads, then every other slope of the 2p-head sequence for the remaining heads
    slopes = powers_of_2(p) + powers_of_2(2 * p)[0::2][:n_head - p]
    return torch.tensor(slopes)


CHECKS = {'my_t5_bucket': 'llm_lab.variants:check_t5_bucket',
          'my_window_mask': 'llm_lab.variants:check_window_mask',
          'my_alibi_slopes': 'llm_lab.variants:check_alibi_slopes'}
