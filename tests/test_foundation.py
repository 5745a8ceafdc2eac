"""The lab's foundation: pins, packaging, llm_lab.core, the CLI, imports without optional packages, docs processing."""
import configparser, importlib, json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest, torch

from llm_lab import core
from llm_lab.core import (get_device, seed_everything, cache_dir, check_function, CheckFailed, main, doctor,
                          use_triton_interpreter, triton_status, embedded_corpus)

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- pins and packaging
def pins_from_requirements() -> dict:
    lines = (ROOT / 'requirements-lab.txt').read_text().splitlines()
    return dict(_split_pin(l) for l in lines if l.strip() and not l.lstrip().startswith('#'))


def pins_from_environment_yml() -> dict:
    lines = (ROOT / 'environment.yml').read_text().splitlines()
    pip_lines = [l.strip()[2:] for l in lines if re.match(r'^\s{4}- ', l)]  # the pip: section is indented 4
    return dict(_split_pin(l) for l in pip_lines)


def _split_pin(line: str):
    spec = line.split('#')[0].strip()
    name, _, rest = spec.partition('==')
    assert rest, f'not an exact pin: {line!r}'
    return name.strip().lower(), rest.strip()


def test_environment_yml_matches_requirements():
    req, env = pins_from_requirements(), pins_from_environment_yml()
    assert req == env, f'only in requirements-lab.txt: {req.items() - env.items()}; only in environment.yml: {env.items() - req.items()}'
    assert 'python=3.11' in (ROOT / 'environment.yml').read_text()


def test_pins_satisfy_package_ranges():
    "Every range settings.ini declares is satisfied by the pinned lab environment."
    from packaging.requirements import Requirement
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    pins = {k: v.split(';')[0] for k, v in pins_from_requirements().items()}
    keys = [k for k in cfg['DEFAULT'] if k.endswith('requirements')]  # the runtime set and every extra
    assert {'requirements', 'dev_requirements', 'hub_requirements', 'kernels_requirements'} <= set(keys)
    for key in keys:
        for spec in cfg['DEFAULT'][key].split():
            r = Requirement(spec)
            assert r.name.lower() in pins, f'{key}: {r.name} is not pinned in requirements-lab.txt'
            assert r.specifier.contains(pins[r.name.lower()].split('+')[0], prereleases=True), \
                f'{key}: {spec} does not admit the pinned {r.name}=={pins[r.name.lower()]}'


def test_nbdev_trio_is_pinned():
    pins = pins_from_requirements()
    assert pins['nbdev'].startswith('2.4.'), 'nbdev 3 refuses settings.ini: stay on 2.4'
    import nbdev, execnb, fastcore
    assert (nbdev.__version__, execnb.__version__, fastcore.__version__) == (pins['nbdev'], pins['execnb'], pins['fastcore'])


def test_quarto_yml_is_found_by_nbdev():
    link = ROOT / 'nbs' / '_quarto.yml'
    assert link.exists() and link.resolve() == (ROOT / '_quarto.yml').resolve()


def test_layout():
    for name in ['settings.ini', 'nbs', 'llm_lab', 'tests', '_quarto.yml', 'environment.yml', 'README.md', 'LICENSE',
                 'Makefile', '.ci/run', 'requirements-lab.txt']:
        assert (ROOT / name).exists(), name
    assert 'Apache License' in (ROOT / 'LICENSE').read_text()[:200]


def test_every_exported_module_has_its_notebook():
    "A generated module whose notebook was renamed or deleted would drift forever."
    for py in (ROOT / 'llm_lab').rglob('*.py'):
        head = py.read_text().splitlines()[:4]
        src = [l for l in head if 'File to edit:' in l]
        if py.name in ('__init__.py', '_modidx.py'): continue
        assert src, f'{py} has no nbdev header: was it written by hand?'
        nb = (py.parent / src[0].split('File to edit:')[1].strip().rstrip('.')).resolve()
        assert nb.exists(), f'{py.relative_to(ROOT)} names {nb}, which does not exist'


# ---------------------------------------------------------------- llm_lab.core
def test_get_device_override(monkeypatch):
    monkeypatch.setenv('LLM_LAB_DEVICE', 'cpu')
    assert get_device() == torch.device('cpu')
    monkeypatch.setenv('LLM_LAB_DEVICE', 'banana')
    with pytest.raises(ValueError, match='expected one of'): get_device()
    monkeypatch.delenv('LLM_LAB_DEVICE')
    assert get_device().type in ('cuda', 'mps', 'cpu')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error on a machine without CUDA')
def test_get_device_unavailable():
    with pytest.raises(RuntimeError, match='not available'): get_device('cuda')


def test_mps_preferred_over_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(core, '_mps_available', lambda: True)
    assert get_device().type == 'mps'


def test_seed_everything_repeats_and_validates():
    seed_everything(123); a = torch.randn(5)
    seed_everything(123); b = torch.randn(5)
    assert torch.equal(a, b)
    for bad in (-1, 2**32, 1.5, 'x', True):
        with pytest.raises(ValueError): seed_everything(bad)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('LLM_LAB_CACHE', str(tmp_path / 'c'))
    assert cache_dir('zoo', 'x') == tmp_path / 'c' / 'zoo' / 'x' and (tmp_path / 'c' / 'zoo' / 'x').is_dir()
    monkeypatch.delenv('LLM_LAB_CACHE')
    assert cache_dir(create=False) == Path.home() / '.cache' / 'llm_lab'


def test_embedded_corpus():
    docs = embedded_corpus()
    assert len(docs) > 50 and all(isinstance(d, str) and d for d in docs) and sum(map(len, docs)) > 300_000


def test_check_function_passes_and_rejects():
    inputs = lambda g: (torch.randn(3, 4, generator=g),)
    assert check_function('tanh', torch.tanh, torch.tanh, inputs).ok
    with pytest.raises(CheckFailed, match=r'first at index'):
        check_function('tanh', torch.sigmoid, torch.tanh, inputs)
    with pytest.raises(CheckFailed, match=r'shape \(4, 3\) but expected \(3, 4\)'):
        check_function('tanh', lambda x: torch.tanh(x).T, torch.tanh, inputs)
    with pytest.raises(CheckFailed, match='raised ZeroDivisionError'):
        check_function('tanh', lambda x: 1 / 0, torch.tanh, inputs)
    report = check_function('ints', lambda a: a + 1, lambda a: a + 2, lambda g: (3,), raise_on_fail=False)
    assert not report.ok and 'got int 4, expected int 5' in report.failure


def test_use_triton_interpreter(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert use_triton_interpreter() is True and os.environ['TRITON_INTERPRET'] == '1'
    assert triton_status() in ('interpreter', 'missing')
    assert use_triton_interpreter(force=False) is False and 'TRITON_INTERPRET' not in os.environ


# ---------------------------------------------------------------- the CLI
def test_cli_help_and_unknown(capsys):
    assert main(['--help']) == 0 and 'doctor' in capsys.readouterr().out
    assert main(['doctr']) == 2 and 'did you mean doctor' in capsys.readouterr().err


def test_cli_missing_subcommand_module(monkeypatch, capsys):
    monkeypatch.setitem(core.COMMANDS, 'later', ('llm_lab.not_written_yet:cli', 'a future chapter'))
    assert main(['later']) == 2 and 'not available' in capsys.readouterr().err


def test_doctor_survives_broken_optional_packages(monkeypatch):
    real_import = importlib.import_module
    def broken(name, *a, **k):
        if name == 'transformers': raise ImportError('simulated missing package')
        if name == 'datasets': raise RuntimeError('simulated broken package')
        return real_import(name, *a, **k)
    monkeypatch.setattr(importlib, 'import_module', broken)
    info = doctor()
    assert info['transformers'].startswith('missing') and info['datasets'].startswith('missing')


def test_console_script_runs():
    exe = Path(sys.executable).parent / 'llm-lab'
    if not exe.exists(): pytest.skip('llm-lab console script not installed in this environment')
    out = subprocess.run([str(exe), 'doctor'], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and 'torch' in out.stdout and 'device' in out.stdout


# ---------------------------------------------------------------- imports without optional packages
BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {blocked}: raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize('blocked', [['triton'], ['triton', 'transformers', 'tokenizers', 'datasets', 'peft', 'sklearn', 'ipywidgets']])
def test_every_module_imports_without_optional_packages(blocked):
    from llm_lab._modidx import d
    modules = sorted(d['syms'])
    code = BLOCKER.format(blocked=set(blocked)) + f"\nimport importlib\nfor m in {modules!r}: importlib.import_module(m)\n" \
           "import llm_lab.core as c\nassert c.triton_status() == 'missing' or 'triton' not in " + repr(blocked) + "\nprint('ok')"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-3000:]


def test_import_has_no_side_effects():
    code = ("import os, sys; import llm_lab, llm_lab.core; import matplotlib as mpl;"
            "assert 'triton' not in sys.modules and 'transformers' not in sys.modules;"
            "assert mpl.rcParams['axes.grid'] is False; assert 'TRITON_INTERPRET' not in os.environ; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------- the docs site (rendering needs Quarto; processing does not)
def test_docs_processing(tmp_path):
    "scripts/docs.py executes and processes pages (here a subset), writes the sidebar and README, never installs Quarto."
    work = tmp_path / 'repo'
    ignore = shutil.ignore_patterns('.venv', '.git', '_proc', '_docs', '__pycache__', '.ipynb_checkpoints', '*.egg-info')
    shutil.copytree(ROOT, work, symlinks=True, ignore=ignore)
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + '/usr/bin:/bin', LLM_LAB_QUIET='1')
    out = subprocess.run([sys.executable, 'scripts/docs.py', '--no-render', '--nbs', 'index 00_core'], cwd=work,
                         capture_output=True, text=True,
                         timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert 'Quarto is not installed' not in out.stdout + out.stderr  # nbdev's installer never ran
    sys.path.insert(0, str(ROOT / 'scripts'))
    try: import docs
    finally: sys.path.pop(0)
    pages = docs.course_pages()
    assert Path('index.ipynb') in pages and Path('0_the_lab/00_core.ipynb') in pages
    sidebar = (work / 'nbs' / 'sidebar.yml').read_text()
    for page in pages: assert page.as_posix() in sidebar, f'{page} is missing from the sidebar'
    assert (work / '_proc' / 'index.ipynb').exists() and not (work / '_proc' / '1_foundations').exists()  # the subset only
    assert 'Part 0 · The lab' in sidebar
    core_nb = json.loads((work / '_proc' / '0_the_lab' / '00_core.ipynb').read_text())
    show_docs = [o for c in core_nb['cells'] for o in c.get('outputs', []) if 'get_device' in json.dumps(o.get('data', {}))]
    assert show_docs, 'show_doc(get_device) produced no documentation output'
    assert core_nb['metadata'].get('llm_lab_executed')
    ran = [c for c in core_nb['cells'] if c['cell_type'] == 'code' and 'show_doc' not in ''.join(c['source']) and c.get('outputs')]
    assert len(ran) >= 3, 'the page was not executed: only show_doc cells have outputs'
    assert (work / 'README.md').read_text() == (ROOT / 'README.md').read_text(), \
        'README.md is out of date with nbs/index.ipynb: run `make docs` and commit README.md'
    assert sidebar == (ROOT / 'nbs' / 'sidebar.yml').read_text(), 'nbs/sidebar.yml is out of date: run `make docs`'


def test_index_links_point_to_real_notebooks():
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    text = ''.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    links = re.findall(r'\]\(([^)#]+\.ipynb)\)', text)
    assert links
    for link in links: assert (ROOT / 'nbs' / link).exists(), f'index links to missing {link}'


def test_ci_runs_make_test():
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()
    assert os.access(ROOT / '.ci' / 'run', os.X_OK)


def test_unsupported_python_is_named(monkeypatch):
    "`make test` on an unsupported Python stops with the versions that work."
    import runpy
    monkeypatch.setattr(sys, 'version_info', (3, 9, 18, 'final', 0))
    with pytest.raises(SystemExit) as stop: runpy.run_path(str(ROOT / 'scripts' / 'check_python.py'))
    assert '3.11, 3.12, 3.13' in str(stop.value.code) and '3.9.18' in str(stop.value.code)


def _docs_executed_cells_with_other_code():
    "Cells nbdev's docs processing would execute out of context: an import plus top-level code (not in an export cell)."
    import ast
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    bad = []
    for nb_path in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        if '.ipynb_checkpoints' in nb_path.parts: continue
        for i, cell in enumerate(json.loads(nb_path.read_text())['cells']):
            src = ''.join(cell['source'])
            if cell['cell_type'] != 'code' or re.search(r'^#\|\s*(export|exporti|exports|eval:\s*false)', src, re.M): continue
            if 'nbdev_export()' in src: continue
            try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
            except SyntaxError: continue
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)) and \
               not all(isinstance(n, allowed) for n in tree.body):
                bad.append(f'{nb_path.relative_to(ROOT)} cell {i}: {src.splitlines()[0][:60]}')
    return bad


def test_notebook_imports_stand_alone():
    "nbdev's docs build runs every cell that imports something; such a cell must not depend on other cells."
    bad = _docs_executed_cells_with_other_code()
    assert not bad, 'put imports in a cell of their own:\n' + '\n'.join(bad)


def test_lab_style_keeps_an_interactive_switch_made_inside():
    """Jupyter's inline backend, loaded by the first styled figure, turns interactive mode on; lab_style must not undo it
    (it did: widgets in JupyterLab then drew no figure, found by tests/test_browser.py)."""
    import matplotlib
    from llm_lab.core import lab_style
    was = matplotlib.is_interactive()
    try:
        matplotlib.interactive(False)
        with lab_style(): matplotlib.interactive(True)
        assert matplotlib.is_interactive()
        with lab_style(): pass
        assert matplotlib.is_interactive()
    finally: matplotlib.interactive(was)
