"""Shared pytest settings: quiet progress bars, a non-interactive plot backend, hypothesis without deadlines."""
import os

os.environ.setdefault('LLM_LAB_QUIET', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

from hypothesis import settings, HealthCheck

# CI machines are small and shared: judge correctness, never speed (no per-example deadline).
settings.register_profile('llm_lab', deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile('llm_lab')
