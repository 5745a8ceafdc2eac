"""`llm-lab check`: each pack's reference solution scores full marks, and planted wrong solutions lose exactly the parts
they should; a student file that does not import, lacks a function, loops forever or raises gets a clear status for
that part while the others are still graded."""
import json, subprocess, sys
from pathlib import Path

import pytest

from llm_lab.grading import PACKS, grade, get_pack

ROOT = Path(__file__).resolve().parent.parent
GPT_SOLUTION = ROOT / 'solutions' / 'assignments' / 'gpt_from_parts.py'
SYSTEMS_SOLUTION = ROOT / 'solutions' / 'assignments' / 'systems.py'


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


def test_gpt_from_parts_reference_scores_full_marks():
    result = grade('gpt-from-parts', GPT_SOLUTION, verbose=False)
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
def test_planted_wrong_solution_loses_exactly_its_parts(tmp_path, name):
    old, new, parts, expected = WRONG[name]
    path = planted(tmp_path, GPT_SOLUTION, old, new, name.replace(' ', '_').replace('/', '_'))
    result = grade('gpt-from-parts', path, parts=parts, verbose=False)
    assert [statuses(result)[p] for p in parts] == expected, json.dumps(result['parts'], indent=1)[:3000]
    pack = get_pack('gpt-from-parts')
    assert result['score'] == sum(p.points for p in pack.parts if p.name in parts and expected[parts.index(p.name)] == 'pass')


def test_an_infinite_loop_costs_only_its_part(tmp_path):
    path = planted(tmp_path, GPT_SOLUTION, '    if step < warmup_steps: return max_lr * (step + 1) / warmup_steps',
                   '    while True: pass', 'loops')
    result = grade('gpt-from-parts', path, parts=['learning-rate schedule', 'attention'], timeout=40, verbose=False)
    assert statuses(result) == {'learning-rate schedule': 'timeout', 'attention': 'pass'}


def test_the_cli_exit_status_and_json(tmp_path):
    path = planted(tmp_path, GPT_SOLUTION, 'scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])',
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


def test_systems_reference_scores_full_marks():
    result = grade('systems', SYSTEMS_SOLUTION, verbose=False)
    assert result['score'] == result['max_score'], statuses(result)


ADAPT_SOLUTION = ROOT / 'solutions' / 'assignments' / 'adaptation_alignment.py'


def test_adaptation_alignment_reference_scores_full_marks():
    result = grade('adaptation-alignment', ADAPT_SOLUTION, verbose=False)
    assert result['score'] == result['max_score'] == get_pack('adaptation-alignment').max_score, statuses(result)


def test_lora_with_inverted_scaling_loses_the_lora_parts(tmp_path):
    path = planted(tmp_path, ADAPT_SOLUTION, 'self.scaling, self.merged = base, alpha / r, False',
                   'self.scaling, self.merged = base, r / alpha, False', 'lora_scaling')
    parts = ['LoRA layer', 'GPT fine-tuned with your LoRA', 'DPO loss']
    result = grade('adaptation-alignment', path, parts=parts, verbose=False)
    assert [statuses(result)[p] for p in parts] == ['fail', 'fail', 'pass'], json.dumps(result['parts'], indent=1)[:3000]
