"""`llm-lab check`: each pack's reference solution, built from the chapter solutions by scripts/pack_solution.py,
scores full marks, and planted wrong solutions lose exactly the parts they should; a student file that does not
import, lacks a function, loops forever or raises gets a clear status for that part while the others are still graded."""
import importlib.util, json, subprocess, sys
from pathlib import Path

import pytest

from llm_lab.grading import PACKS, Pack, Part, grade, get_pack

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('pack_solution', ROOT / 'scripts' / 'pack_solution.py')
packer = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(packer)


@pytest.fixture(scope='session')
def reference(tmp_path_factory):
    "reference(pack) -> the pack's reference solution file, built from solutions/NN_*.py once per session."
    built = {}
    def build(name: str) -> Path:
        if name not in built:
            built[name] = tmp_path_factory.mktemp('reference') / f"{name.replace('-', '_')}.py"
            built[name].write_text(packer.pack_source(name))
        return built[name]
    return build


def planted(tmp_path, source: Path, old: str, new: str, name: str) -> Path:
    "A copy of `source` with exactly one planted change (the test fails if `old` is not found exactly once)."
    text = source.read_text()
    assert text.count(old) == 1, f'the planted change {name!r} no longer applies: {old!r} occurs {text.count(old)} times'
    path = tmp_path / f'{name}.py'
    path.write_text(text.replace(old, new))
    return path


def statuses(result) -> dict: return {r['part']: r['status'] for r in result['parts']}


def test_every_pack_has_its_folder_and_a_complete_student_file():
    for pack in PACKS.values():
        folder = ROOT / 'assignments' / pack.folder
        assert (folder / 'README.md').is_file() and (folder / 'student.py').is_file(), folder
        student = (folder / 'student.py').read_text()
        for part in pack.parts:
            for fn in part.functions: assert f'def {fn}(' in student or f'class {fn}(' in student, (pack.name, fn)
            assert part.name in (folder / 'README.md').read_text(), (pack.name, part.name)


def test_gpt_from_parts_reference_scores_full_marks(reference):
    result = grade('gpt-from-parts', reference('gpt-from-parts'), verbose=False)
    assert result['score'] == result['max_score'] == get_pack('gpt-from-parts').max_score, statuses(result)
    assert result['passed']


def test_the_stub_file_is_not_attempted_everywhere():
    result = grade('gpt-from-parts', ROOT / 'assignments' / 'gpt_from_parts' / 'student.py',
                   parts=['attention', 'AdamW step', 'GPT with your block'], verbose=False)
    assert set(statuses(result).values()) == {'not attempted'} and result['score'] == 0


WRONG = {  # name: (old, new, parts graded, the statuses expected)
    'attention without 1/sqrt(d)': ('scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])', 'scores = q @ k.transpose(-2, -1)',
                                    ['attention', 'learning-rate schedule', 'GPT with your attention+AdamW'], ['fail', 'pass', 'fail']),
    'coupled weight decay': ("return _adam(param, grad, state, hp, decoupled=True)", "return _adam(param, grad, state, hp, decoupled=False)",
                             ['AdamW step', 'attention', 'GPT with your attention+AdamW'], ['fail', 'pass', 'fail']),
    'block without residual': ('h = x + self.attn(self.norm_1(x), kv_cache, token_positions)', 'h = self.attn(self.norm_1(x), kv_cache, token_positions)',
                               ['transformer block', 'GPT with your block', 'AdamW step'], ['fail', 'fail', 'pass']),
    'does not import': ('def my_lr(step', 'def my_lr(step,,', ['attention', 'AdamW step'], ['error', 'error']),
    'missing function': ('def my_encode(', 'def my_encode_renamed(', ['BPE encoder', 'attention'], ['missing', 'pass']),
}


@pytest.mark.parametrize('name', list(WRONG))
def test_planted_wrong_solution_loses_exactly_its_parts(tmp_path, reference, name):
    old, new, parts, expected = WRONG[name]
    path = planted(tmp_path, reference('gpt-from-parts'), old, new, name.replace(' ', '_').replace('/', '_'))
    result = grade('gpt-from-parts', path, parts=parts, verbose=False)
    assert [statuses(result)[p] for p in parts] == expected, json.dumps(result['parts'], indent=1)[:3000]
    pack = get_pack('gpt-from-parts')
    assert result['score'] == sum(p.points for p in pack.parts if p.name in parts and expected[parts.index(p.name)] == 'pass')


def test_an_infinite_loop_costs_only_its_part(tmp_path, reference):
    path = planted(tmp_path, reference('gpt-from-parts'), '    if step < warmup_steps: return max_lr * (step + 1) / warmup_steps',
                   '    while True: pass', 'loops')
    result = grade('gpt-from-parts', path, parts=['learning-rate schedule', 'attention'], timeout=40, verbose=False)
    assert statuses(result) == {'learning-rate schedule': 'timeout', 'attention': 'pass'}


def test_the_cli_exit_status_and_json(tmp_path, reference):
    path = planted(tmp_path, reference('gpt-from-parts'), 'scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])',
                   'scores = q @ k.transpose(-2, -1)', 'wrong')
    out = tmp_path / 'result.json'
    proc = subprocess.run([str(Path(sys.executable).parent / 'llm-lab'), 'check', 'gpt-from-parts', str(path), '--parts', 'attention',
                           '--json', str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result['score'] == 0 and result['max_score'] == 1 and result['parts'][0]['status'] == 'fail'
    assert 'expected' in result['parts'][0]['message'] or 'differ' in result['parts'][0]['message']
    bad = subprocess.run([str(Path(sys.executable).parent / 'llm-lab'), 'check', 'no-such-pack', str(path)], capture_output=True, text=True)
    assert bad.returncode == 2 and 'no assignment pack' in bad.stderr


def test_the_grader_writes_nothing_outside_its_temp_dir(tmp_path):
    "A student file that writes to its working directory and home writes into the part's temporary folder only."
    path = tmp_path / 'writer.py'
    path.write_text("import os, pathlib\npathlib.Path('written.txt').write_text('x')\n"
                    "pathlib.Path(os.path.expanduser('~/written_home.txt')).write_text('x')\n"
                    "def my_lr(step, max_lr, warmup_steps, total_steps, min_lr): raise NotImplementedError\n")
    before = set(tmp_path.iterdir())
    result = grade('gpt-from-parts', path, parts=['learning-rate schedule'], verbose=False)
    assert statuses(result) == {'learning-rate schedule': 'not attempted'}
    assert set(tmp_path.iterdir()) == before and not (Path.home() / 'written_home.txt').exists()


def test_systems_reference_scores_full_marks(reference):
    result = grade('systems', reference('systems'), verbose=False)
    assert result['score'] == result['max_score'] == get_pack('systems').max_score, statuses(result)


def test_adaptation_alignment_reference_scores_full_marks(reference):
    result = grade('adaptation-alignment', reference('adaptation-alignment'), verbose=False)
    assert result['score'] == result['max_score'] == get_pack('adaptation-alignment').max_score, statuses(result)


def test_lora_with_inverted_scaling_loses_the_lora_parts(tmp_path, reference):
    path = planted(tmp_path, reference('adaptation-alignment'), 'self.scaling, self.merged = base, alpha / r, False',
                   'self.scaling, self.merged = base, r / alpha, False', 'lora_scaling')
    parts = ['LoRA layer', 'GPT fine-tuned with your LoRA', 'DPO loss']
    result = grade('adaptation-alignment', path, parts=parts, verbose=False)
    assert [statuses(result)[p] for p in parts] == ['fail', 'fail', 'pass'], json.dumps(result['parts'], indent=1)[:3000]


# ---- scripts/pack_solution.py: one copy of each solution, packed per pack

@pytest.mark.parametrize('name', list(PACKS))
def test_a_packed_reference_defines_each_function_once_and_nothing_else(name):
    text = packer.pack_source(name)
    ns = {}
    exec(compile(text, name, 'exec'), ns)   # it imports: every helper and import its functions use came along
    for fn in {f for part in get_pack(name).parts for f in part.functions}:
        assert text.count(f'def {fn}(') + text.count(f'class {fn}(') == 1 and callable(ns[fn]), (name, fn)
    assert 'CHECKS' not in ns, "the chapter files' CHECKS tables must not be copied"


def test_pack_solution_cli(tmp_path):
    script = ROOT / 'scripts' / 'pack_solution.py'
    out = tmp_path / 'systems.py'
    ok = subprocess.run([sys.executable, str(script), 'systems', '--out', str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0 and out.read_text() == packer.pack_source('systems'), ok.stderr
    bad = subprocess.run([sys.executable, str(script), 'no-such-pack'], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and 'no assignment pack' in bad.stderr and 'gpt-from-parts' in bad.stderr


def _fake_solutions(tmp_path, extra: str) -> Path:
    "A solutions folder: chapter 03's real solution file plus one pack-only file `assignments/extra.py`."
    (tmp_path / 'solutions' / 'assignments').mkdir(parents=True)
    (tmp_path / 'solutions' / '03_training.py').write_text((ROOT / 'solutions' / '03_training.py').read_text())
    (tmp_path / 'solutions' / 'assignments' / 'extra.py').write_text(extra)
    return tmp_path / 'solutions'


def _pack(*functions) -> Pack: return Pack('fake', 'fake', tuple(Part(f, (f,), 'x:y') for f in functions), folder='fake')


def test_pack_only_functions_come_from_solutions_assignments(tmp_path):
    extra = ("import math\nimport json\nSCALE = 2.0\n\n\ndef _helper(x):\n    return SCALE * math.sqrt(x)\n\n\n"
             "def my_only_in_a_pack(x):\n    return _helper(x) + 1\n\n\ndef unused():\n    return json.dumps(1)\n")
    text = packer.pack_source(_pack('my_only_in_a_pack', 'my_lr'), _fake_solutions(tmp_path, extra))
    ns = {}; exec(text, ns)
    assert ns['my_only_in_a_pack'](4.0) == 5.0 and ns['my_lr'](0, 1.0, 4, 10, 0.0) == 0.25
    assert '# ---- from solutions/03_training.py' in text and '# ---- from solutions/assignments/extra.py' in text
    assert 'def unused' not in text and 'import json' not in text and 'def my_sgd_step' not in text   # only what is used


def test_pack_solution_refuses_a_second_copy_or_a_missing_function(tmp_path):
    solutions = _fake_solutions(tmp_path, "def my_lr(step, max_lr, warmup_steps, total_steps, min_lr):\n    return max_lr\n")
    with pytest.raises(ValueError, match=r"'my_lr' is defined in \['03_training.py', 'extra.py'\]: keep one copy"):
        packer.pack_source(_pack('my_lr'), solutions)
    with pytest.raises(ValueError, match="needs 'my_nowhere', but no solution file"):
        packer.pack_source(_pack('my_nowhere'), solutions)


def test_pack_solution_refuses_two_different_helpers_of_one_name(tmp_path):
    solutions = _fake_solutions(tmp_path, "def _adam(x):\n    return x\n\n\ndef my_other(x):\n    return _adam(x)\n")
    with pytest.raises(ValueError, match="'_adam' means different things"):
        packer.pack_source(_pack('my_adamw_step', 'my_other'), solutions)
