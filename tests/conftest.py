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
