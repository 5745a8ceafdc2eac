"""`make test`: everything CI checks, in order, with one summary line at the end.

1. `nbdev_export` must not change llm_lab/ (the package is in step with the notebooks);
2. `nbdev_clean` must not change a notebook (notebooks are committed clean);
3. every notebook runs top to bottom under `nbdev_test` (cells flagged `slow`/`gpu` skipped unless
   asked for with --flags), each in its own process so no state is shared, N at a time;
4. `pytest tests/`.
"""
import argparse, hashlib, json, os, subprocess, sys, tempfile, time, xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NB_TIMEOUT_S = 600  # a notebook that runs longer than this on CI is a bug (budget: 90 s, 4 min when training)


def digests(folder: Path, pattern: str) -> dict:
    "Map each file matching `pattern` under `folder` to a hash of its bytes."
    return {str(p.relative_to(ROOT)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob(pattern)) if p.is_file() and '.ipynb_checkpoints' not in p.parts}


def changed(before: dict, after: dict) -> list:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def run_tool(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], cwd=ROOT, capture_output=True, text=True)


def check_unchanged(title: str, tool: str, folder: Path, pattern: str, fix: str) -> bool:
    "Run `tool`; fail (and say what to do) if it changed files matching `pattern` under `folder`."
    before = digests(folder, pattern)
    res = run_tool(tool)
    if res.returncode != 0:
        print(f'✗ {title}: {tool} failed\n{res.stdout}{res.stderr}'); return False
    diff = changed(before, digests(folder, pattern))
    if diff:
        print(f'✗ {title}: {tool} changed {len(diff)} file(s): {", ".join(diff[:10])}\n  {fix}'); return False
    print(f'✓ {title}'); return True


# The longest chapters start first, so that the last one to finish does not run alone (measured on CI, 2 cores: seconds).
LONGEST_FIRST = {'20_multimodal': 275, '12_finetuning': 146, '07_variants': 94, '16_preference': 91, '09_pretraining': 86,
                 '13_peft': 80, '06_transformer': 67}

def notebooks() -> list:
    "Every notebook of the course, skipping folders/files starting with '_' or '.', the longest ones first."
    nbs = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb')
                 if not any(part.startswith(('_', '.')) for part in p.relative_to(ROOT / 'nbs').parts))
    return sorted(nbs, key=lambda p: -LONGEST_FIRST.get(p.stem, 0))


def run_notebook(nb: Path, flags: str, env: dict):
    t0 = time.time()
    try:
        res = subprocess.run([str(BIN / 'nbdev_test'), '--path', str(nb), '--flags', flags], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=NB_TIMEOUT_S)
        ok, log = res.returncode == 0, res.stdout + res.stderr
    except subprocess.TimeoutExpired:
        ok, log = False, f'timed out after {NB_TIMEOUT_S} s'
    return nb, ok, time.time() - t0, log


def test_notebooks(flags: str, workers: int) -> tuple:
    nbs = notebooks()
    env = dict(os.environ, LLM_LAB_QUIET='1', MPLBACKEND='Agg', PYTHONHASHSEED='0',
               # share the cores between the parallel notebooks instead of oversubscribing them
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // workers)))
    passed, failed, times = 0, 0, {}
    print(f'notebooks: running {len(nbs)} with {workers} worker(s), flags={flags!r}', flush=True)
    with ThreadPoolExecutor(workers) as pool:
        for fut in as_completed([pool.submit(run_notebook, nb, flags, env) for nb in nbs]):
            nb, ok, secs, log = fut.result()
            name = str(nb.relative_to(ROOT / 'nbs'))
            times[name] = round(secs, 1)
            print(f'  {"✓" if ok else "✗"} {name}  {secs:.0f} s', flush=True)
            if ok: passed += 1
            else: failed += 1; print('\n'.join('      ' + l for l in log.strip().splitlines()[-40:]))
    return passed, failed, times


def run_pytest(workers: int) -> tuple:
    tests = list((ROOT / 'tests').glob('test_*.py'))
    if not tests:
        print('pytest: tests/ has no test files, skipped'); return 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / 'junit.xml'
        args = [str(BIN / 'python'), '-m', 'pytest', 'tests', '-q', f'--junitxml={xml}', '-p', 'no:cacheprovider']
        if workers > 1: args += ['-n', str(workers)]
        env = dict(os.environ, LLM_LAB_QUIET='1', MPLBACKEND='Agg',
                   LLM_LAB_REQUIRE_ALL='1',  # a missing parity dependency fails here instead of skipping (tests/conftest.py)
                   OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // workers)))  # tiny tensors: threads only fight
        rc = subprocess.run(args, cwd=ROOT, env=env).returncode
        if not xml.exists():
            print(f'✗ pytest exited {rc} without a report'); return 0, 1, 0
        suites = ET.parse(xml).getroot().iter('testsuite')
        total = failed = skipped = 0
        for s in suites:
            total += int(s.get('tests', 0)); skipped += int(s.get('skipped', 0))
            failed += int(s.get('failures', 0)) + int(s.get('errors', 0))
    if rc == 5:  # "no tests collected" although test files exist
        print('✗ pytest collected no tests although tests/ has test files'); failed += 1
    elif rc != 0 and failed == 0:
        print(f'✗ pytest exited {rc}'); failed += 1
    return total - failed - skipped, failed, skipped


def warm_zoo() -> bool:
    """Train (or find cached) every zoo model once, with all cores, before the notebooks start: otherwise two notebooks
    that need the same base model would both wait on its lock, and the first one would pay its training in its time."""
    code = ("import time; from llm_lab.zoo import ZOO, pretrained\n"
            "for name in ZOO:\n"
            "    t0 = time.time(); pretrained(name); print(f'  zoo {name}: ready in {time.time() - t0:.0f} s', flush=True)")
    env = dict(os.environ, LLM_LAB_QUIET='1', OMP_NUM_THREADS=str(os.cpu_count() or 1))
    t0 = time.time()
    res = subprocess.run([str(BIN / 'python'), '-c', code], cwd=ROOT, env=env, capture_output=True, text=True)
    print(res.stdout, end='')
    if res.returncode != 0:
        print(f'✗ zoo: training the base models failed\n{res.stderr[-3000:]}'); return False
    print(f'✓ zoo models ready ({time.time() - t0:.0f} s)'); return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--flags', default='', help="test flags to run, e.g. 'slow gpu' (default: none)")
    ap.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1), help='notebooks/pytest in parallel')
    ap.add_argument('--skip', default='', help="steps to skip, e.g. 'notebooks' or 'pytest' (for local use)")
    args = ap.parse_args()
    t0 = time.time()
    ok_export = check_unchanged('package in step with the notebooks', 'nbdev_export', ROOT / 'llm_lab', '**/*.py',
                                'the committed llm_lab/ was out of date: commit the exported files')
    ok_clean = check_unchanged('notebooks are clean', 'nbdev_clean', ROOT / 'nbs', '**/*.ipynb',
                               'commit the cleaned notebooks (run nbdev_clean before committing)')
    nb_pass = nb_fail = py_pass = py_fail = py_skip = 0
    times = {}
    ok_zoo = warm_zoo() if 'zoo' not in args.skip else True
    if 'notebooks' not in args.skip: nb_pass, nb_fail, times = test_notebooks(args.flags, args.workers)
    if 'pytest' not in args.skip: py_pass, py_fail, py_skip = run_pytest(args.workers)
    wall = time.time() - t0
    (ROOT / '_proc').mkdir(exist_ok=True)
    (ROOT / '_proc' / 'test-times.json').write_text(json.dumps({'wall_s': round(wall), 'notebooks_s': times}, indent=1))
    slowest = max(times.items(), key=lambda kv: kv[1]) if times else ('-', 0)
    checks_failed = (not ok_export) + (not ok_clean) + (not ok_zoo)
    print(f'\nnotebooks: {nb_pass} passed, {nb_fail} failed (slowest {slowest[0]}: {slowest[1]:.0f} s) | '
          f'pytest: {py_pass} passed, {py_fail} failed, {py_skip} skipped | '
          f'export/clean/zoo checks: {3 - checks_failed}/3 | wall {wall:.0f} s')
    print(f'summary: {nb_pass + py_pass + 3 - checks_failed} passed, {nb_fail + py_fail + checks_failed} failed, '
          f'{py_skip} skipped')
    sys.exit(1 if nb_fail or py_fail or checks_failed else 0)


if __name__ == '__main__':
    main()
