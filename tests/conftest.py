"""Shared pytest settings: quiet progress bars, a non-interactive plot backend, Triton's interpreter on machines
without CUDA (chosen before anything imports triton), hypothesis without deadlines."""
import os

os.environ.setdefault('LLM_LAB_QUIET', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

from llm_lab.core import use_triton_interpreter
use_triton_interpreter()  # must run before the first `import triton` in this process

from hypothesis import settings, HealthCheck

# CI machines are small and shared: judge correctness, never speed (no per-example deadline).
settings.register_profile('llm_lab', deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile('llm_lab')

import importlib
import importlib.util
from pathlib import Path
import pytest


def require(module: str):
    """Import an optional test dependency (transformers, tokenizers, peft…) and return it.

    Under `make test`, which installs every dependency and sets LLM_LAB_REQUIRE_ALL=1, a missing one FAILS
    the test: a parity check must never vanish silently. Run by hand without it, the test is skipped."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get('LLM_LAB_REQUIRE_ALL') == '1':
            pytest.fail(f"{module!r} is required by `make test` but does not import: {e}", pytrace=False)
        pytest.skip(f"{module!r} is not installed ({e})")


def load_solution(filename: str):
    "The reference solutions of one chapter, `solutions/<filename>`, as a module (the folder is not a package)."
    path = Path(__file__).resolve().parents[1] / 'solutions' / filename
    spec = importlib.util.spec_from_file_location(f'solution_{path.stem}', path)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module


def stub(*args):
    "What a learner starts from: every exercise stub raises NotImplementedError."
    raise NotImplementedError


@pytest.fixture(scope='module')
def lm():
    "A tiny random GPT with the chat tokens and a BPE tokenizer trained on arithmetic prompts (chapters 15-16's tests)."
    import torch
    from llm_lab.model import GPT, GPTConfig
    from llm_lab.tokenizer import BPETokenizer, EOT
    docs = [f"What is {a} + {b}? {a + b}. Sort these digits: 3 1 2" for a in range(10) for b in range(10)]
    tok = BPETokenizer.train(docs, 300, special_tokens=[EOT, '<|user|>', '<|assistant|>', '<|end|>'])
    torch.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=tok.vocab_size, context_len=64, n_layer=2, n_head=2, d_model=32)).eval()
    return model, tok
