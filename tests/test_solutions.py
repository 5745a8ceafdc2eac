"""Every exercise's reference solution (solutions/NN_chapter.py) passes its checker, and every chapter's stubs are
answered: the checks that learners run in the notebooks, run here on the solutions instead of in a notebook cell."""
import ast, importlib, importlib.util, json, re
from pathlib import Path

import pytest

from llm_lab.core import use_triton_interpreter

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / 'solutions').glob('[0-9]*.py'))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f'solution_{path.stem}', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def cases():
    for path in SOLUTIONS:
        mod = load(path)
        for fn_name, target in mod.CHECKS.items():
            yield pytest.param(path, fn_name, target, id=f'{path.stem}:{fn_name}')


def chapter_notebooks() -> list:
    "The numbered chapters (01_..., 22_...): not part 0, not the companions (09a, 09b), not the instructors' part 9."
    return sorted(nb for nb in (ROOT / 'nbs').rglob('[0-9][0-9]_*.ipynb')
                  if not nb.name.startswith('00') and nb.parent.name != '9_instructors')


def test_every_chapter_has_exercises_with_solutions():
    have = {p.stem.split('_')[0] for p in SOLUTIONS}
    missing = [nb.name for nb in chapter_notebooks() if nb.name[:2] not in have]
    assert not missing, f'chapters without solutions/NN_*.py: {missing}'



@pytest.mark.parametrize('path,fn_name,target', list(cases()))
def test_solution_passes_its_checker(path, fn_name, target):
    use_triton_interpreter()
    mod = load(path)
    module, checker = target.split(':')
    report = getattr(importlib.import_module(module), checker)(getattr(mod, fn_name))
    assert report is None or (getattr(report, 'attempted', True) and getattr(report, 'ok', True)), str(report)


def stub_names(nb: Path) -> set:
    "Names of the functions a notebook's exercise cells leave for the learner (`def my_...: raise NotImplementedError`)."
    cells = json.loads(nb.read_text())['cells']
    names = set()
    for c in cells:
        src = ''.join(c['source'])
        if c['cell_type'] == 'code' and 'NotImplementedError' in src:
            names |= set(re.findall(r'^(?:def|class) (my_\w+|My\w+)', src, flags=re.M))
    return names


@pytest.mark.parametrize('path', SOLUTIONS, ids=lambda p: p.stem)
def test_every_stub_of_the_chapter_has_a_solution(path):
    "The notebook whose number matches the solution file: each of its `my_*` stubs is solved and mapped to a checker."
    prefix = path.stem.split('_')[0]
    nbs = [nb for nb in (ROOT / 'nbs').rglob(f'{prefix}_*.ipynb')]
    assert len(nbs) == 1, f'no single notebook numbered {prefix}: {nbs}'
    stubs, mod = stub_names(nbs[0]), load(path)
    assert stubs, f'{nbs[0].name} has no exercise stubs'
    assert mod.CHECKS and set(mod.CHECKS) <= stubs, f'{path.name} checks functions the notebook does not leave to the learner: {sorted(set(mod.CHECKS) - stubs)}'
    missing = sorted(n for n in stubs if not hasattr(mod, n))  # kernels (@triton.jit) are solved too, checked through their launcher
    assert not missing, f'stubs without a solution in {path.name}: {missing}'


def test_each_solution_is_written_once():
    "An exercise's solution (`my_*`, `My*`) lives in one file of solutions/: assignment packs are built from them by scripts/pack_solution.py, not copied."
    where = {}
    for path in sorted((ROOT / 'solutions').rglob('*.py')):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and re.match(r'(my_|My)', node.name):
                where.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    twice = {name: files for name, files in where.items() if len(files) > 1}
    assert where and not twice, f'solutions written more than once (keep one, import or pack it): {twice}'
