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


def runtime_site(tmp_path) -> Path:
    """A site-packages holding only what `pip install llm_lab` installs: links to the runtime distributions' files.
    Python started with -S and this folder (plus the source tree) on its path sees no other installed package, as
    in a fresh virtual environment: an undeclared import fails exactly as it would for a user."""
    site = tmp_path / 'site'
    site.mkdir()
    for name in runtime_distributions():
        dist = md.distribution(name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != '..' and not f.name.endswith('.pth')}:
            target, link = Path(dist.locate_file(top)), site / top
            if target.exists() and not link.exists(): link.symlink_to(target, target_is_directory=target.is_dir())
    return site


def run_with_runtime_only(code: str, tmp_path, timeout=300):
    site = runtime_site(tmp_path)
    env = {k: v for k, v in __import__('os').environ.items() if not k.startswith('PYTHON')}
    env.update(PYTHONPATH=f'{site}{__import__("os").pathsep}{ROOT}', LLM_LAB_CACHE=str(tmp_path / 'cache'), LLM_LAB_QUIET='1',
               MPLCONFIGDIR=str(tmp_path / 'mpl'))
    return subprocess.run([sys.executable, '-S', '-c', textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env=env)


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


def test_the_runtime_site_really_lacks_the_extras(tmp_path):
    "The check above can fail: an extra (transformers, pytest) is absent there, while torch and regex import."
    out = run_with_runtime_only("""
        import importlib.util, torch, regex
        assert importlib.util.find_spec('transformers') is None and importlib.util.find_spec('pytest') is None
        print('ok')""", tmp_path)
    assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-3000:]


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


@pytest.mark.skipif(__import__('os').environ.get('LLM_LAB_FRESH_VENV') != '1',
                    reason='set LLM_LAB_FRESH_VENV=1 (make test does) to install llm_lab into a fresh venv (about 2 minutes)')
def test_plain_pip_install_in_a_fresh_venv(tmp_path):
    "`pip install llm_lab` (no extras) into a new virtual environment, then `llm-lab pretrain` and `generate` run."
    import venv
    env_dir = tmp_path / 'venv'
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ('Scripts' if sys.platform == 'win32' else 'bin')
    pip = subprocess.run([str(bin_dir / 'python'), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
                          '-c', str(ROOT / 'requirements-lab.txt'), str(ROOT)], capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    extras = subprocess.run([str(bin_dir / 'python'), '-c', 'import transformers'], capture_output=True)
    assert extras.returncode != 0, 'a plain install must not bring the extras'
    (tmp_path / 'corpus').mkdir()
    for i in range(20): (tmp_path / 'corpus' / f'doc{i}.txt').write_text(f'Document {i}. The quick brown fox jumps over the lazy dog. ' * 20)
    env = {**__import__('os').environ, 'LLM_LAB_CACHE': str(tmp_path / 'cache'), 'LLM_LAB_QUIET': '1'}
    cli = str(bin_dir / 'llm-lab')
    run = subprocess.run([cli, 'pretrain', '--data', 'corpus', '--out', 'ckpt', '--vocab-size', '300', '--context-len', '32',
                          '--n-layer', '1', '--n-head', '2', '--d-model', '32', '--steps', '5', '--batch-size', '4',
                          '--eval-every', '5', '--device', 'cpu'], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    gen = subprocess.run([cli, 'generate', 'ckpt', '--prompt', 'The quick', '-n', '5'], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert gen.returncode == 0 and gen.stdout.strip(), gen.stderr[-3000:]
