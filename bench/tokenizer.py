"""Benchmark llm_lab.tokenizer against Hugging Face `tokenizers` (ByteLevel BPE) on the embedded corpus.

Measures, on one core (CPU time of this process, so other load on the machine does not count): the time to train a 4,096-token vocabulary on `llm_lab.core.embedded_corpus()`,
encoding throughput in MB/s, like with like: one text at a time with a cold cache (a freshly loaded tokenizer, first
pass), one text at a time warm (second pass), and a whole batch warm (our `encode_batch` vs HF's `encode_batch`), and
compression in bytes per token (on the training text and on held-out documents, training on 4/5).
Also checks that our tokenizer, loaded from HF's trained files, gives HF's ids on every document.

    .venv/bin/python bench/tokenizer.py [--vocab-size 4096] [--repeats 3] [--out bench/results/tokenizer.json]
"""
import os
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')  # HF on one thread too, like our pure-Python code
import argparse, json, platform, sys, tempfile, time
from pathlib import Path


def best_time(fn, repeats):
    """Smallest CPU time (process_time: this process, all threads) of `repeats` calls of `fn()`, and the last result.

    CPU time, not wall time: on a shared machine other processes inflate wall time, not CPU time. Both our
    code and HF (TOKENIZERS_PARALLELISM=false) run on one thread, so CPU time is the one-core time."""
    best, out = float('inf'), None
    for _ in range(repeats):
        t0 = time.process_time(); out = fn(); best = min(best, time.process_time() - t0)
    return best, out


def hf_train(texts, vocab_size):
    from tokenizers import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=['<|endoftext|>'], show_progress=False)
    return tok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--vocab-size', type=int, default=4096)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'tokenizer.json'))
    args = ap.parse_args(argv)

    import tokenizers
    from llm_lab.core import embedded_corpus
    from llm_lab.tokenizer import BPETokenizer, bytes_per_token

    docs = embedded_corpus()
    n_bytes = sum(len(d.encode()) for d in docs)
    mb = n_bytes / 1e6
    V, R = args.vocab_size, args.repeats
    t_start = time.perf_counter()
    print(f'corpus: {len(docs)} documents, {mb:.3f} MB; vocab {V}; best of {R} (CPU time, one thread); '
          f'TOKENIZERS_PARALLELISM={os.environ["TOKENIZERS_PARALLELISM"]}')

    t_ours, ours = best_time(lambda: BPETokenizer.train(docs, V), R)
    t_hf, hf = best_time(lambda: hf_train(docs, V), R)

    with tempfile.TemporaryDirectory() as tmp:
        path = ours.save(Path(tmp) / 'ours.json')
        def cold():  # a freshly loaded tokenizer has an empty pre-token cache
            tok = BPETokenizer.load(path); t0 = time.process_time(); ids = [tok.encode(d) for d in docs]
            return time.process_time() - t0, ids
        t_cold = min(cold()[0] for _ in range(R))
        t_warm, ids_ours = best_time(lambda: [ours.encode(d) for d in docs], R)
        t_batch, _ = best_time(lambda: ours.encode_batch(docs), R)
        hf.save_model(tmp, 'hf')
        from tokenizers import ByteLevelBPETokenizer
        def hf_cold():  # a freshly loaded HF tokenizer: its word cache is empty too
            tok = ByteLevelBPETokenizer(str(Path(tmp) / 'hf-vocab.json'), str(Path(tmp) / 'hf-merges.txt'))
            t0 = time.process_time(); [tok.encode(d).ids for d in docs]
            return time.process_time() - t0
        t_hf_cold = min(hf_cold() for _ in range(R))
        t_hf_one, _ = best_time(lambda: [hf.encode(d).ids for d in docs], R)
        t_hf_batch, enc_hf = best_time(lambda: hf.encode_batch(docs), R)
        ids_hf = [e.ids for e in enc_hf]
        from_hf = BPETokenizer.from_gpt2_files(Path(tmp) / 'hf-vocab.json', Path(tmp) / 'hf-merges.txt')
        parity = all(from_hf.encode(d) == i for d, i in zip(docs, ids_hf))
    assert all(ours.decode(i) == d for d, i in zip(docs, ids_ours)), 'round trip failed'

    train_docs, held = [d for i, d in enumerate(docs) if i % 5], docs[::5]
    ours_split, hf_split = BPETokenizer.train(train_docs, V), hf_train(train_docs, V)
    held_bytes = sum(len(d.encode()) for d in held)
    bpt = {'ours': {'train_text': n_bytes / sum(map(len, ids_ours)), 'held_out': bytes_per_token(ours_split, held)},
           'hf': {'train_text': n_bytes / sum(map(len, ids_hf)),
                  'held_out': held_bytes / sum(len(e.ids) for e in hf_split.encode_batch(held))}}

    rows = [('train 4k vocab (s)' if V == 4096 else f'train {V} vocab (s)', f'{t_ours:.2f}', f'{t_hf:.2f}'),
            ('encode MB/s, one text at a time, cold (fresh load)', f'{mb / t_cold:.2f}', f'{mb / t_hf_cold:.2f}'),
            ('encode MB/s, one text at a time, warm (2nd pass)', f'{mb / t_warm:.2f}', f'{mb / t_hf_one:.2f}'),
            ('encode MB/s, encode_batch of all docs, warm', f'{mb / t_batch:.2f}', f'{mb / t_hf_batch:.2f}'),
            ('bytes per token, training text', f'{bpt["ours"]["train_text"]:.3f}', f'{bpt["hf"]["train_text"]:.3f}'),
            ('bytes per token, held-out 1/5', f'{bpt["ours"]["held_out"]:.3f}', f'{bpt["hf"]["held_out"]:.3f}')]
    w = max(len(r[0]) for r in rows)
    print(f'\n{"":{w}}  {"llm_lab":>10}  {"HF tokenizers":>14}')
    for name, a, b in rows: print(f'{name:{w}}  {a:>10}  {b:>14}')
    print(f'\nours loaded from HF-trained files gives HF ids on all {len(docs)} documents: {parity}')

    result = {'machine': {'platform': platform.platform(), 'processor': platform.processor(), 'cpus': os.cpu_count(),
                          'python': platform.python_version(), 'tokenizers': tokenizers.__version__},
              'corpus': {'documents': len(docs), 'bytes': n_bytes}, 'vocab_size': V, 'repeats': R,
              'timing': 'best-of-repeats process CPU time (one thread), robust to other load on the machine',
              'hf_threads': 1 if os.environ['TOKENIZERS_PARALLELISM'] == 'false' else 'rayon default',
              'train_s': {'ours': t_ours, 'hf': t_hf},
              'encode_MBps': {'one_at_a_time_cold': {'ours': mb / t_cold, 'hf': mb / t_hf_cold},
                              'one_at_a_time_warm': {'ours': mb / t_warm, 'hf': mb / t_hf_one},
                              'encode_batch_warm': {'ours': mb / t_batch, 'hf': mb / t_hf_batch}},
              'bytes_per_token': bpt, 'parity_with_hf_trained_files': parity}
    out = Path(args.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {out} ({time.perf_counter() - t_start:.0f} s wall)')
    return 0 if parity else 1


if __name__ == '__main__':
    sys.exit(main())
