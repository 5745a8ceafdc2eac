"""The package as a user installs it: no undefined names in any module, and `pip install llm_lab` (no extras)
is enough to import every module and run the command line (pretrain, generate, doctor)."""
import importlib.metadata as md, json, re, subprocess, sys, textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def test_no_undefined_names_in_the_package():
    "A name used in a module but defined only in a notebook's non-exported cell fails here (as `plot_temperature` once did)."
    from pyflakes.api import checkPath
    from pyflakes.reporter import Reporter
    import io
    out, err = io.StringIO(), io.StringIO()
    for f in sorted((ROOT / 'llm_lab').rglob('*.py')): checkPath(str(f), Reporter(out, err))
    undefined = [l for l in out.getvalue().splitlines() if 'undefined name' in l or 'star imports' in l]
    assert not undefined and not err.getvalue(), '\n'.join(undefined) + err.getvalue()


def runtime_distributions() -> set:
    "The distributions `pip install llm_lab` brings: the runtime requirements of settings.ini and all they depend on."
    todo = [Requirement(r).name for r in _settings('requirements').split()]
    seen = set()
    while todo:
        name = re.sub(r'[-_.]+', '-', todo.pop()).lower()
        if name in seen: continue
        seen.add(name)
        for r in md.requires(name) or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({'extra': ''}): todo.append(req.name)
    return seen


def _settings(key: str) -> str:
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT'][key]


# In a fresh interpreter, refuse to import any third-party module that a plain `pip install llm_lab` would not bring.
ONLY_RUNTIME = """
import sys, importlib.abc, importlib.metadata as md
allowed_dists = set({dists!r})
owners = md.packages_distributions()
def third_party_allowed(top):
    dists = owners.get(top)
    if dists is None: return True  # stdlib, or llm_lab itself
    return any(d.lower().replace('_', '-') in allowed_dists for d in dists) or top == 'llm_lab'
class OnlyRuntime(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split('.')[0]
        if not third_party_allowed(top): raise ImportError(f'{{top}} is not a runtime dependency of llm_lab (blocked by the test)')
sys.meta_path.insert(0, OnlyRuntime())
"""


def run_with_runtime_only(code: str, tmp_path, timeout=300):
    script = ONLY_RUNTIME.format(dists=sorted(runtime_distributions())) + textwrap.dedent(code)
    return subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env={**__import__('os').environ, 'LLM_LAB_CACHE': str(tmp_path / 'cache'), 'LLM_LAB_QUIET': '1'})


def test_runtime_dependencies_are_declared():
    "The runtime set is what settings.ini declares: regex is in it, the extras are not."
    dists = runtime_distributions()
    assert {'torch', 'numpy', 'regex', 'safetensors'} <= dists
    assert not {'transformers', 'tokenizers', 'datasets', 'peft', 'scikit-learn', 'triton', 'pytest'} & dists


def test_every_module_imports_with_runtime_dependencies_only(tmp_path):
    from llm_lab._modidx import d
    modules = sorted(d['syms'])
    out = run_with_runtime_only(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('ok')", tmp_path)
    assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-3000:]


def test_the_blocker_really_blocks(tmp_path):
    "The check above can fail: an extra (transformers) does not import under it."
    out = run_with_runtime_only("import transformers", tmp_path)
    assert out.returncode != 0 and 'not a runtime dependency' in out.stderr


def test_pretrain_and_generate_with_runtime_dependencies_only(tmp_path):
    "`llm-lab pretrain` for a few steps, then `llm-lab generate` and `doctor`, with nothing but the runtime dependencies."
    (tmp_path / 'corpus').mkdir()
    for i in range(20): (tmp_path / 'corpus' / f'doc{i}.txt').write_text(f'Document {i}. The quick brown fox jumps over the lazy dog. ' * 20)
    out = run_with_runtime_only("""
        from llm_lab.core import main
        rc = main(['pretrain', '--data', 'corpus', '--out', 'ckpt', '--vocab-size', '300', '--context-len', '32',
                   '--n-layer', '1', '--n-head', '2', '--d-model', '32', '--steps', '5', '--batch-size', '4',
                   '--eval-every', '5', '--device', 'cpu'])
        assert rc == 0, rc
        assert main(['generate', 'ckpt', '--prompt', 'The quick', '-n', '5']) == 0
        assert main(['doctor']) == 0
        print('ok')""", tmp_path)
    assert out.returncode == 0 and 'ok' in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


def test_doctor_lists_every_declared_dependency():
    "`llm-lab doctor` reports every distribution settings.ini declares, runtime and extras."
    from llm_lab.core import PACKAGES, doctor
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    declared = {Requirement(r).name.lower() for key in cfg['DEFAULT'] if key.endswith('requirements') for r in cfg['DEFAULT'][key].split()}
    declared.discard('torch')  # doctor reports torch on its own line
    assert declared <= set(PACKAGES), f'declared but not in core.PACKAGES: {sorted(declared - set(PACKAGES))}'
    info = doctor()
    assert all(dist in info for dist in PACKAGES) and info['torch']
